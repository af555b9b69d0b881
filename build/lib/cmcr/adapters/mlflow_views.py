"""MLflow UI: a saved view of an experiment's runs table (visible columns, sort, filter).

Why the public API is not enough: MLflow has no API for the columns its runs table shows; a
user picks them in the browser, and the UI keeps them in the browser's local storage. What the
UI of MLflow 3.17 does offer is *saved views*: "Views → Save" stores the table's state as an
experiment tag ``mlflow.sharedViewState.<key>`` (the public ``set_experiment_tag`` writes it) and
the link ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it for anyone. The tag's
value (an envelope ``{name, createdAt, updatedAt, state}`` whose ``state`` is the page state as
JSON) is the UI's own format, not a documented one: it is written here and nowhere else, and
tests/test_mlflow_experiments.py pins it against the UI bundle MLflow ships (and the screenshot
script, dashboards/mlflow_screenshots.py, shows it applied).
"""

from __future__ import annotations

import json
import time

from cmcr.names import ExpTag

VIEW_KEY = "cmcr-study"  # one view per study experiment, rewritten when the study changes
# the runs page's state keys and their defaults (MLflow 3.17, experiment page search facets and
# UI state); only the columns, the order and the filter differ from the UI's defaults
_DEFAULT_STATE = {
    "searchFilter": "",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "startTime": "ALL",
    "lifecycleFilter": "Active",
    "datasetsFilter": [],
    "modelVersionFilter": "All Runs",
    "selectedColumns": [],
    "columnOrder": [],
    "columnWidths": {},
    "runsHiddenMode": "FIRST_10_RUNS",
    "viewMaximized": False,
    "runListHidden": False,
    "isAccordionReordered": False,
    "useGroupedValuesInCharts": True,
    "hideEmptyCharts": True,
    "groupBy": None,
    "groupsExpanded": {},
    "globalLineChartConfig": {
        "xAxisKey": "step",
        "lineSmoothness": 0,
        "selectedXAxisMetricKey": "",
    },
}


def column(kind: str, key: str) -> str:
    """The UI's id of a runs-table column: ``metrics.`val/miou```, ``params.`loss.weights.mim```."""
    return f"{kind}.`{key}`"


def runs_view(
    name: str,
    metrics: list[str],
    params: list[str],
    *,
    order_by: str,
    ascending: bool = False,
    filter_string: str = "",
) -> tuple[str, str]:
    """(experiment tag key, value) of a saved view showing ``metrics`` then ``params`` as the
    visible columns, sorted by metric ``order_by``, runs matching ``filter_string``."""
    columns = [column("metrics", m) for m in metrics] + [column("params", p) for p in params]
    columns.append(column("attributes", "Dataset"))  # the world and split each run read
    state = {**_DEFAULT_STATE, "searchFilter": filter_string, "selectedColumns": columns,
             "columnOrder": columns, "orderByKey": column("metrics", order_by), "orderByAsc": ascending}  # fmt: skip
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return ExpTag.VIEW_PREFIX + VIEW_KEY, json.dumps(envelope)


def view_query(key: str = VIEW_KEY) -> str:
    """The query string that opens saved view ``key`` on the runs page."""
    return f"viewStateShareKey={key}"
