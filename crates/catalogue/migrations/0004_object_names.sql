-- One object per name in a dataset, enforced by the database: the hub's check before an upload
-- completes races with a concurrent upload of the same name. Names that a hub before this
-- migration let two objects share keep the oldest; the later ones get their id appended.
UPDATE objects SET name = name || ' [' || id || ']'
WHERE EXISTS (
    SELECT 1 FROM objects o2
    WHERE o2.dataset = objects.dataset AND o2.name = objects.name
      AND (o2.created_ms < objects.created_ms OR (o2.created_ms = objects.created_ms AND o2.id < objects.id))
);
CREATE UNIQUE INDEX objects_dataset_name ON objects (dataset, name);
