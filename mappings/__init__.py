"""Source records to UK Core resources, driven by mapping specs and terminology maps kept as data."""
