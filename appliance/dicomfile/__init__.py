"""DICOM objects as bytes and files, with no policy: the appliance's pure layer.

What it holds: the whole-object check (structure), header readers (header:
pydicom; fastheader: straight from the bytes), DICOM JSON (dicomjson), pixel
access, transcoding and rendering (pixels, render; codestream checks a
compressed frame's own header before a decoder sees it), the index columns
(columns), and the tables every one of them shares (vr: VRs and the UID rule;
syntax: transfer syntaxes).

Rules (docs/DESIGN.md, layers): anything may import this package and it
imports nothing else of the appliance; it reads the bytes it is handed or the
files it is pointed at, writes nothing and keeps no state, with one exception:
isolated.py keeps the worker process that runs GDCM decodes, because GDCM
aborts the process on data it dislikes and must not take the daemon with it.
"""
