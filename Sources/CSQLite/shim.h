#include <sqlite3.h>

/* sqlite3_db_config is variadic, which Swift cannot call: one fixed-signature wrapper per option used. */
static inline int harmony_sqlite_no_checkpoint_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}

static inline int harmony_sqlite_enable_triggers(sqlite3 *db, int enable) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, enable, (int *)0);
}

/* Defensive mode: no writable_schema, no direct shadow-table writes, for connections serving remote SQL. */
static inline int harmony_sqlite_defensive(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)0);
}

/* load_extension() stays off even if the library was built to allow it by default. */
static inline int harmony_sqlite_no_load_extension(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, (int *)0);
}

/* Whether DDL takes a double-quoted name that matches no column for a string literal: set (0 or 1), or read (-1). */
static inline int harmony_sqlite_dqs_ddl(sqlite3 *db, int enable, int *now) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_DQS_DDL, enable, now);
}

/* fts3_tokenizer() with two arguments takes a pointer to C code from SQL; off even if the library turned it on. */
static inline int harmony_sqlite_no_fts3_tokenizer(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, 0, (int *)0);
}
