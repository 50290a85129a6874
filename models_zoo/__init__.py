"""models_zoo (imported as audit.models_zoo)."""
