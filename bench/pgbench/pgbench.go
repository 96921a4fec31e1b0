// Package pgbench holds the raw-SQL ceilings Allot is measured against:
// pgbench scripts of the statements a booking makes, without Allot.
package pgbench

import _ "embed"

var (
	//go:embed setup.sql
	Setup string
	//go:embed hot.sql
	Hot string
	//go:embed hotel.sql
	Hotel string
)

// Teardown drops what Setup made.
const Teardown = `DROP TABLE IF EXISTS allot_pgbench_hot, allot_pgbench_nights, allot_pgbench_reservations, allot_pgbench_outbox`
