"""The web UI: server-rendered pages (Jinja2) and one small script, served by the API process.

``pages`` holds the run list and the run page, ``login`` the key form, ``rendering`` the
template environment and the shared formatting; ``templates/`` and ``static/`` ship in the
package (pyproject.toml's package-data), so the UI works offline and needs no Node toolchain.
The pages read through the API's own queries (``api.routes.flow_runs``), and the script
through its JSON routes: there is no second data path.
"""
