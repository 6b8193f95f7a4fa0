"""Modality Worklist: the watched .wl folder, PS3.4 K.6 matching, .wl authoring and MPPS."""
