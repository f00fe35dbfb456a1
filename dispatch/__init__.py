"""dispatch: signed, filesystem-mediated job dispatch between hosts, run by systemd."""

__version__ = "0.1.0"
