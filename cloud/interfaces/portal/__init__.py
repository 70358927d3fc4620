"""The portal: server-rendered pages with htmx."""
