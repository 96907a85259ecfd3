//! The schema, from the SQL files in `migrations/`, applied in order at start by sqlx's migrator,
//! which records them in `_sqlx_migrations`. Never edit a migration that has shipped: add the
//! next.
//!
//! Releases up to 0.1 applied the same files with rusqlite_migration, which kept how many were
//! applied in `PRAGMA user_version` instead. Such a database has those recorded as applied before
//! the migrator runs (`tests/upgrade.rs` opens one that release made).

use sqlx::migrate::{Migrate, Migrator};
use sqlx::SqliteConnection;

use super::StoreError;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Runs with foreign keys off: a migration that makes a table anew drops the old one, which would
/// otherwise delete (or cascade to) the rows that refer to it. The references are checked after.
pub(super) async fn apply(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    record_user_version_history(conn).await?;
    // Dialect: SQLite's foreign_keys pragma (a no-op inside a transaction; the migrator opens its own).
    sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut *conn).await?;
    let migrated = MIGRATOR.run_direct(&mut *conn).await;
    let dangling: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check").fetch_all(&mut *conn).await?;
    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
    migrated?;
    match dangling.first() {
        None => Ok(()),
        Some((table,)) => Err(StoreError::Unreadable(format!(
            "after the migrations, rows of {table} refer to rows that do not exist"
        ))),
    }
}

/// Records the first `user_version` migrations as applied, where `_sqlx_migrations` does not
/// already have them.
async fn record_user_version_history(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    // Dialect: SQLite's user_version.
    let applied: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *conn).await?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied == 0 {
        return Ok(());
    }
    if applied > MIGRATOR.iter().count() {
        return Err(StoreError::Unreadable(format!(
            "the database has {applied} migrations applied, more than this version knows: it was made by a later release"
        )));
    }
    conn.ensure_migrations_table().await?;
    for migration in MIGRATOR.iter().take(applied) {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (?1, ?2, TRUE, ?3, 0)
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(migration.version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .execute(&mut *conn)
        .await?;
    }
    // Recorded where the migrator looks: user_version is no longer read.
    sqlx::query("PRAGMA user_version = 0").execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Row};

    async fn memory() -> SqliteConnection {
        SqliteConnection::connect("sqlite::memory:").await.unwrap()
    }

    async fn applied_versions(conn: &mut SqliteConnection) -> Vec<i64> {
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    }

    #[tokio::test]
    async fn a_fresh_database_gets_every_migration() {
        let mut conn = memory().await;
        apply(&mut conn).await.unwrap();
        let all: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(applied_versions(&mut conn).await, all);
        let outbox: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM callback_outbox").fetch_one(&mut conn).await.unwrap();
        assert_eq!(outbox, 0);
        apply(&mut conn).await.expect("applying again changes nothing");
    }

    #[tokio::test]
    async fn a_database_of_the_user_version_releases_gets_only_the_migrations_it_lacks() {
        let mut conn = memory().await;
        let first = MIGRATOR.iter().next().unwrap();
        sqlx::raw_sql(&first.sql).execute(&mut conn).await.unwrap();
        sqlx::query("PRAGMA user_version = 1").execute(&mut conn).await.unwrap();
        apply(&mut conn).await.unwrap();
        assert_eq!(applied_versions(&mut conn).await.len(), MIGRATOR.iter().count());
        let probe: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM write_probe").fetch_one(&mut conn).await.unwrap();
        assert_eq!(probe, 1, "the later migrations ran");
    }

    #[tokio::test]
    async fn a_database_of_a_later_release_is_refused() {
        let mut conn = memory().await;
        sqlx::query("PRAGMA user_version = 99").execute(&mut conn).await.unwrap();
        assert!(matches!(apply(&mut conn).await, Err(StoreError::Unreadable(_))));
    }
}
