"""hoopgw replay."""
