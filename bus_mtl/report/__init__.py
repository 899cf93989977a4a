"""``bus-mtl report``: one self-contained HTML page for a results folder (a ``bus-mtl
main`` run, a ``cv`` or ``compare`` output, an ``evaluate`` output): metrics with 95 %
intervals, provenance, ROC / reliability / confusion / threshold / referral figures,
per-centre tables, and a gallery of cases with their class-activation maps.

``collect`` tells the folder's kind and reads it (``evaluate_folder``, ``run_folder``,
``cv_folder``, with ``files`` and ``result_set``), ``gallery`` redraws chosen cases with the
folder's model, ``figures`` draws the plots, ``render`` writes the HTML;
:func:`write_report` does all.
"""

from bus_mtl.report.write import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "write_report"]
