import pg from 'pg';

/**
 * Whether `err` means the connection is gone, rather than PostgreSQL refusing one statement: not
 * an answer from the server at all, or one of SQLSTATE classes 08 (connection exception) and 57
 * (operator intervention, e.g. the server shutting down).
 */
export function connectionLost(err: unknown): boolean {
  if (!(err instanceof pg.DatabaseError)) return true;
  return err.code === undefined || /^(08|57)/.test(err.code);
}
