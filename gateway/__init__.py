"""kidsafe-gateway: the daemon on the reader boxes at school gates and in parks."""

__version__ = "0.1.0"
