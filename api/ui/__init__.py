"""The web UI: server-rendered pages (Jinja2) and two small scripts, served by the API process.

``pages`` holds the run list and the run page, ``flows_page`` the flows and their start
forms, ``actions`` the actions (cancel, retry, rename, start a run) behind ``csrf``'s token,
``login`` the key form, ``rendering`` the template environment and the shared formatting;
``templates/`` and ``static/`` ship in the package (pyproject.toml's package-data), so the
UI works offline and needs no Node toolchain. The pages read through the API's own queries
(``api.routes.flow_runs``), the scripts through its JSON routes, and the actions call its
route functions: there is no second data path.
"""
