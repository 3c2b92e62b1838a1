"""Watching what is served: the fetch log (``logs.<join>``) and the online–offline consistency job."""
