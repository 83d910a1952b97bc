"""The quality-budgeted search behind ``genexp-optimize``: search spaces per family (``space``), one trial's
fine-tune as an ordinary genexp-train run (``trial``), its export and measurement on this machine
(``measure``), the study and its resumption (``study``), the choice of ``best/`` (``select``) and the report
(``report``)."""
