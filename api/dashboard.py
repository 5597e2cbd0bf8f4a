"""The dashboard page (being built): one HTML page served by the API, charts from Plotly's bundled plotly.js."""

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
