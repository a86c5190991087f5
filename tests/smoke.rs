//! The thinnest end-to-end path: a tiny database backed up to each kind of
//! repository and restored into a new database.

mod common;

use common::workspace::{Backend, Workspace};
use common::{Postgres, S3Server, block_on, unique_bucket_name};

fn round_trip(ws: &mut Workspace, pg: &Postgres) {
    pg.createdb("shop");
    pg.psql("shop", "CREATE TABLE orders(id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 500) g;");
    ws.postgres_policy("shop", pg, "shop");
    let id = ws.backup("shop");
    assert_eq!(ws.backups("shop")[0]["id"], id.as_str());
    let target = pg.url("shop_restored");
    ws.ok(&[
        "restore", "shop", "--to", "latest", "--target", &target, "--yes", "--verify",
    ]);
    assert_eq!(
        pg.psql("shop_restored", "SELECT count(*), sum(id) FROM orders"),
        "500|125250"
    );
}

#[test]
fn local_directory_round_trip() {
    let pg = Postgres::start();
    let mut ws = Workspace::local();
    round_trip(&mut ws, &pg);
}

#[test]
fn s3_round_trip() {
    let pg = Postgres::start();
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("smoke");
    block_on(s3.create_bucket(&bucket, true));
    let mut ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket,
    });
    round_trip(&mut ws, &pg);
}
