"""The one door back from disk (checkpoint, artifact, run folder) with its trust check, and resizing."""
