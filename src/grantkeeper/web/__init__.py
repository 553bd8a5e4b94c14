"""Server-rendered pages: the end user's Connect pages and the admin UI."""
