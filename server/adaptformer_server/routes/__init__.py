"""One APIRouter per resource: predictions, adapters, health."""
