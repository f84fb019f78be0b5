"""MongoDB: URLs read as the driver reads them, error classification, topology detection."""
