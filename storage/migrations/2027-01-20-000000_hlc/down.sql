DROP TABLE hlc_state;
