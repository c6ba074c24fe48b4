"""`study report STUDY`: a study against the paper's Table 1 (Tomczak & Welling, AISTATS 2018).

Modules, one job each:

* :mod:`~study.report.paper`    -- the paper's table (``paper_table1.json``), units, the difference;
* :mod:`~study.report.collect`  -- what MLflow holds about a study, as plain data;
* :mod:`~study.report.summary`  -- the report's content (report.json) from that data;
* :mod:`~study.report.render`   -- report.md and report.json;
* :mod:`~study.report.figures`  -- the PNG figures (matplotlib, Agg);
* :mod:`~study.report.terminal` -- the Rich table;
* :mod:`~study.report.build`    -- the command: check, write the folder, log to the parent run.
"""
