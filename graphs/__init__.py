"""graphs (imported as audit.graphs)."""
