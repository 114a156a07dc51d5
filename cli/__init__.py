"""hoopgw cli."""
