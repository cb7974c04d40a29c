"""AttributionScanner: attributions, the slicer, slice runs, mosaics, annotations, and CoRM mitigation."""
