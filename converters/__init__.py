"""converters (imported as audit.converters)."""
