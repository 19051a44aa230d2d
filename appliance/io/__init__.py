"""Readers: DICOM and ordinary image files to greyscale frames plus metadata."""
