"""Pure tensor math: no models, no files."""
