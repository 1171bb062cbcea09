"""Errors that carry a user-facing, one-line explanation."""


class MrisynthError(Exception):
    """An error whose message is meant for the user: what, where, expected, found, what to do."""


class DataError(MrisynthError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(MrisynthError):
    """A parameter file or option is invalid."""


class ServiceError(MrisynthError):
    """A shared service (tracking server, object store, database) did not answer in time."""
