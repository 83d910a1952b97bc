"""Start-up, config -> Lightning objects, run folders, errors and the distributed job scope."""
