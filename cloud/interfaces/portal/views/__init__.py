"""The web portal: server-rendered pages, htmx for the live parts."""
