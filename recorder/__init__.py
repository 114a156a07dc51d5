"""hoopgw recorder."""
