"""The console: server-rendered pages for people, under ``/console/`` of the gateway's own app.

Two audiences (docs/console.md):

- the IG board (role ``ig-auditor``, or ``admin``): the consent register, the access log and a
  person's whole access history, the log's integrity, publication to the HIE, data quality,
  and CSV / FHIR NDJSON exports of what the filters show;
- clinicians and care staff (role ``provider``): one person's shared care view, through the
  same disclosure function as the API (decide, log, then release).

Pages use the NHS.UK design system (``nhsuk-frontend-jinja`` macros, the compiled CSS and JS
vendored under ``static/``). Staff sign in with an access token of their organisation's client
(``session``); forms carry a CSRF token; no NHS number is ever put in a URL (``seal``).
"""
