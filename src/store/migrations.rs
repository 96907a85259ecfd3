//! The schema, from the SQL files in `migrations/`, applied in order at start. The version
//! applied is kept in `PRAGMA user_version` (rusqlite_migration).

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

use super::StoreError;

/// Every migration, oldest first. Never edit one that has shipped: add the next.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../migrations/20261125000001_initial.sql")),
    M::up(include_str!("../../migrations/20261204000001_temp_generation_and_finish_attempts.sql")),
    M::up(include_str!("../../migrations/20261204000002_write_probe.sql")),
];

pub(super) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    adopt_sqlx_history(conn)?;
    Migrations::from_slice(MIGRATIONS).to_latest(conn).map_err(|e| StoreError::Unreadable(e.to_string()))
}

/// Databases made before fupload drove SQLite itself recorded their migrations in sqlx's
/// `_sqlx_migrations` table, not in `user_version`: count those as applied.
fn adopt_sqlx_history(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let sqlx_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        [],
        |row| row.get(0),
    )?;
    if version == 0 && sqlx_table {
        let applied: i64 =
            conn.query_row("SELECT COUNT(*) FROM _sqlx_migrations WHERE success", [], |row| row.get(0))?;
        conn.pragma_update(None, "user_version", applied)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_are_valid() {
        assert!(Migrations::from_slice(MIGRATIONS).validate().is_ok());
    }

    #[test]
    fn a_database_sqlx_migrated_is_taken_as_it_is() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../../migrations/20261125000001_initial.sql")).unwrap();
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN NOT NULL);
             INSERT INTO _sqlx_migrations VALUES (20261125000001, TRUE);",
        )
        .unwrap();
        apply(&mut conn).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        // And a fresh one gets every migration.
        let mut fresh = Connection::open_in_memory().unwrap();
        apply(&mut fresh).unwrap();
        let outbox: i64 = fresh.query_row("SELECT COUNT(*) FROM callback_outbox", [], |row| row.get(0)).unwrap();
        assert_eq!(outbox, 0);
    }
}
