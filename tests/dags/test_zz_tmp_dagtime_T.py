import time, json, pytest
pytestmark = [pytest.mark.airflow]
def test_x(airflow_db, airflow_conns):
    from train_ensemble import train_ensemble_dag as dag
    for i in range(3):
        t=time.time(); r=dag.test(run_conf={"action":"promote","version":"nope"}); print("run", i, r.state, time.time()-t)
