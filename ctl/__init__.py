"""chapiteauctl: the command-line client of the control, event and stats endpoints."""
