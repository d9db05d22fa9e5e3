"""The web console, served by the API process: pages for marketers, reps and operators
(docs/console.md)."""
