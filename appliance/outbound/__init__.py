"""The outbound engine (issue 13): forwarding rules, the workers that empty the
durable send queue (appliance.store's Outbox) towards DICOM modalities and
DICOMweb servers, and the storage commitment reports that travel the same way.

- :mod:`.rules`: pure, which destinations a new instance is queued for;
- :mod:`.engine`: one worker thread per destination, the scheduler, backoff;
- :mod:`.stow`: the STOW-RS client (DicomWeb.Servers);
- :mod:`.commands`: ``pacs-appliance send`` and ``queue``.
"""
