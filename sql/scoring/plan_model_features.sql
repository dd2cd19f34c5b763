-- The feature names, in training order, of a registered model version (no row: the version is unknown).
select features
from ml.model_versions
where version = :model_version
