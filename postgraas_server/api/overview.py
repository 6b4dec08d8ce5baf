"""GET /postgraas_overview: the auth mode, who the token is, and each backend's load. It tells a
token nothing the API does not already: backend names are in /openapi.json, instance counts in
/metrics, and the limits are what a create at them is told."""

from __future__ import annotations

from typing import Any

from flask import current_app, g
from flask_restful import Resource

from ..overview_schemas import OverviewOut
from ..schemas import render
from ..service.overview import backend_loads


class Overview(Resource):
    def get(self) -> dict[str, Any]:
        state = current_app.extensions["postgraas"]
        return render(OverviewOut.of(state.settings.auth.mode, g.principal, backend_loads(state.backends)))
