"""Pure DICOM file knowledge: no I/O of its own, no logging, no module state.

Anything may import this package (see docs/DESIGN.md, layers); it reads bytes
it is given, or through a reader it is handed.
"""
