"""The web UI (`gnomon ui`, ``/ui`` on `gnomon serve`): a JSON API over the repo's plan, warehouse, run
history, online store and consistency results, and the static pages that read it."""
