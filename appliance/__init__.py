"""pacs-appliance: a mini-PACS for small clinics."""

__version__ = "0.1.0"
