"""chapiteau protocol: message formats and parsers as data and pure functions.

Every module here is sans-IO except three that the broker and the supervisor
share and that are named for their I/O: ``channel`` (send and receive frames
on the broker channel), ``ini_files`` (read a config file and its includes)
and ``standard_fds`` (open fds 0-2 at start).
"""
