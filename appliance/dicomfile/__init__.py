"""DICOM objects as bytes and files, with no policy: the appliance's pure layer.

What it holds: the whole-object check (structure), header readers (header:
pydicom; fastheader: straight from the bytes), DICOM JSON (dicomjson), pixel
access, transcoding and rendering (pixels, render), and the tables every one
of them shares (vr: VRs and the UID rule; syntax: transfer syntaxes).

Rules (docs/DESIGN.md, layers): anything may import this package and it
imports nothing else of the appliance; it reads the bytes it is handed or the
files it is pointed at, writes nothing, logs nothing and keeps no state.
"""
