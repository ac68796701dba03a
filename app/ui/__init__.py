"""The dashboard: index.html and static/*.js, *.css, served by app.api.routes.ui."""
