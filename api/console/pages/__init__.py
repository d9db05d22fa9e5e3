"""One module per console page; each gives `routes(console) -> APIRouter`."""
