"""hoopgw addons."""
