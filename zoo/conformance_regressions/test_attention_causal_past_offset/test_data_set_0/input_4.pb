B
past_valueJç&2>2%”½