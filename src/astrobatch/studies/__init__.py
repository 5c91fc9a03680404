"""Studies: each subpackage holds one study's own science (simulator, formats, stages)."""
